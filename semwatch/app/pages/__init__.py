"""Streamlit page files (run by path from main.py's st.navigation, never imported)."""

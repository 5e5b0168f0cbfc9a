"""The semwatch service (`semwatch run`) split by concern; :mod:`semwatch.daemon` ties it together."""

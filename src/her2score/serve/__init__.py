"""The web service: scoring over HTTP (``her2score serve``)."""

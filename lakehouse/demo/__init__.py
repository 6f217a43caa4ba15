"""The demo source: an operational shop database and click events arriving as files."""

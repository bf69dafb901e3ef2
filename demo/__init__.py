"""The demo, above the library and both apps: train -> export -> index -> query."""

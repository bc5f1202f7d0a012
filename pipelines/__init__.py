"""Offline commands above the library: they write datasets or run multi-step recipes (``lm-suite <tool>``)."""

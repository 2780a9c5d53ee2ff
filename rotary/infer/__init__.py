"""The use side: a trained run loaded (``pretrained``), the decode engine and its sampling,
generation, beam search, fill-mask, classification, translation, scoring, batch files, and the
OpenAI-compatible server (``serve/``)."""

"""`affectclip serve`: a local web app and versioned REST API around one `EmotionModel` (see ARCHITECTURE.md)."""

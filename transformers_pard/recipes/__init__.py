"""End-to-end recipes that turn a real target into a trained PARD draft."""

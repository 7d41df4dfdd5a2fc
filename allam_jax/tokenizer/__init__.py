"""Arabic vocabulary expansion: train SentencePiece, merge into a base model, fertility, embedding surgery."""

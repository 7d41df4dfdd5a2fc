"""Arabic vocabulary expansion: train SentencePiece, merge into a base model, fertility, embedding surgery."""

# how ``expand-checkpoint`` starts each new embedding row (see tokenizer/expand.py); the CLI's choices
INIT_METHODS = ("mean_subtoken", "fitted", "mean_all", "random")

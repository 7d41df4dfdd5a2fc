"""Arabic vocabulary expansion: train SentencePiece, merge into a base model, fertility, embedding surgery."""

# how ``expand-checkpoint`` starts each new embedding row (see tokenizer/expand.py); the CLI's choices
INIT_METHODS = ("mean_subtoken", "fitted", "mean_all", "random")
# what ``tokenizer merge --normalization`` compiles into the merged model (see tokenizer/charsmap.py)
NORMALIZATIONS = ("nfc_tatweel", "nfc_tatweel_nodiacritics", "base")

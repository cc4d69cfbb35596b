"""Text: NFKC with offsets, MeCab, the tokenizer, vocabulary training, the page-text reader."""

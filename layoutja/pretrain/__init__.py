"""Pretraining: windows and masking, MVLM, ELECTRA, a LayoutLM made from a BERT."""

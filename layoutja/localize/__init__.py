"""Localization: scan raw HTML, wrap each subword, render in Chromium, store the boxes."""

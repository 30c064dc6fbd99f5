"""Data: reading every FER2013 layout, duplicates, synthetic faces, landmarks and face regions."""

"""Faces in a user's photos and clips: detection, landmark checks, crops, classification, output files."""

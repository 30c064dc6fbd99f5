"""The report: what a notebook needs (`context`), the builder that executes and renders, offline math."""

"""Scoring of the tiny FDA-shaped task: 1 when the gold value occurs in the generation (case-insensitive)."""


def process_results(doc, results):
    generation = results[0].lower()
    return {"contains": float(doc["value"].strip().lower() in generation)}

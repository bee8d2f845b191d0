"""Bad manifest rows, each with the warning ingest gives and the field that must survive it:
checked row by row in tests/unit/test_ingest.py and all together in tests/e2e/test_hostile_e2e.py."""

BAD_ROWS = [  # (manifest row, the warning, what must survive)
    ({"valence": "1.5", "arousal": "0", "expression": "happy"}, "outside [-1, 1]", "prior_expression"),
    ({"valence": "0.2", "AU12": "1"}, "together", "au_set"),
    ({"expression": "bored", "valence": "0.1", "arousal": "0.2"}, "alias", "prior_valence"),
    ({"expression": "contempt", "label_set": "happy,sad", "AU06": "1"}, "label_set", "au_set"),
    ({"expression": "7", "label_scheme": "nope", "valence": "0", "arousal": "0"}, "scheme", "prior_valence"),
    ({"expression": "happy", "AU99": "1", "AU12": "1"}, "17 AUs", "au_set"),
    ({"expression": "sad", "AU04": "yes"}, "AU04", "prior_expression"),
    ({"expression": "anger", "arousal": "high", "valence": "0.1"}, "not a number", "prior_expression"),
    ({"expression": "fear", "AUxyz": "1"}, "AUxyz", "prior_expression"),
]

"""The features behind the `seke` command: FEAB, compare, publish (exports), estimate, knowledge refit, inbox."""

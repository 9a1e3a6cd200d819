"""Explanations of a saved fedpriv model: SHAP values for tabular models, Captum integrated
gradients for transformers; shared by the coordinator's report and the site's fedpriv-explain."""

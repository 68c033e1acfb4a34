"""Analysis: metrics, Grad-CAM and activations, figures, and the HTML report, all on a `TrainedModel`."""

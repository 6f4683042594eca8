"""VDM, NCSN, score SDE and rectified flow on one shared core, trained with Lightning."""

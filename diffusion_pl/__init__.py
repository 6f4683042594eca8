"""VDM, NCSN, score-SDE, rectified flow, EDM, consistency models, MeanFlow on one Lightning core."""

"""Turns a trained run into the signed, versioned model bundle that devices install."""

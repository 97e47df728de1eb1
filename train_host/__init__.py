"""Host side: learns good parts from a folder of images and evaluates on labelled test images."""

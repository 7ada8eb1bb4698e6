"""A job as a whole: plan it, check where its weights are, launch its graph on the loop;
batches of jobs; the weights stages."""

"""Ray clusters on Cloudera AI (CML) applications, and the CML jobs pipeline."""

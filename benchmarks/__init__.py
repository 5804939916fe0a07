"""`make bench`: each issue's figures beside a reference measured in the same run."""

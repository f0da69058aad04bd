"""Ray Data annotation pipeline: manifest -> decode -> preprocess -> model -> Parquet."""

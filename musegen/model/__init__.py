"""The trained model: backbone, output heads, conditioning and normalisation, without Lightning."""

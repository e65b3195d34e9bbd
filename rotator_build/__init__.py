"""Build-time tools (`rotator package`): installed with the wheel, never inside a Lambda zip."""

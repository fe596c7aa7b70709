"""The one exception type of the data pipeline."""


class DataError(ValueError):
    """Bad input or inconsistent prepared data; the message names the file, line or field."""

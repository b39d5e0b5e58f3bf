"""Imports: files read into records (`readers`), records mapped to rows (`columns`), rows checked and
written all or nothing (`batches`), and the file import entry points and background run (`files`)."""

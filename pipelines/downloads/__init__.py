"""The one guarded downloader every URL the server fetches goes through, and its policy."""

"""The peer: proxy, rules, task ids, piece store, downloader, upload server."""

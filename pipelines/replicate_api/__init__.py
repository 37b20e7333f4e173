"""The one Replicate client (create with retry, poll with progress, cancel, download),
its errors worded for the user and its file handling; images, video and training use it.
"""

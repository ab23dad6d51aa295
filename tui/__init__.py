"""front end"""

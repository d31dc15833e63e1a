"""Insights for tenant admins: sentiment of what users and customers write, and usage reports."""

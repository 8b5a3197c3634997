"""core/apis"""

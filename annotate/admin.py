"""Django admin: DRF's Token admin is taken away. API keys live hashed in annotate.ApiToken (issued by
`adduser` and the token endpoint, shown once); a DRF Token made in the admin would be a clear-text key
that no authentication class accepts. (rest_framework.authtoken stays installed for migration 0008.)"""
from django.contrib import admin
from rest_framework.authtoken.models import TokenProxy

if admin.site.is_registered(TokenProxy):
    admin.site.unregister(TokenProxy)

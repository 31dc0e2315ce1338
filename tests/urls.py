from django.contrib import admin
from django.urls import path

import django_pdr.metrics

urlpatterns = [path("admin/", admin.site.urls), path("pdr/metrics", django_pdr.metrics.view)]

"""Playground pages: chat sessions with served models, login required, owner-scoped."""

from __future__ import annotations

from django.urls import path

from playground import views

app_name = "playground"
urlpatterns = [
    path("", views.chat_session_index, name="index"),
    path("sessions", views.chat_session_create_view, name="create"),
    path("sessions/<str:session_id>/", views.chat_session_detail, name="session"),
    path("sessions/<str:session_id>/messages", views.chat_message_send, name="send"),
    path("sessions/<str:session_id>/delete", views.chat_session_delete_view, name="delete"),
]

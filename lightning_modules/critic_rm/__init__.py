"""Critic-RM (Yu et al. 2025): a reward model that writes a critique, then scores."""

from lightning_modules.critic_rm.module import CriticRM

__all__ = ["CriticRM"]

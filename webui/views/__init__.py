"""The web pages' views: thin functions over the presenters, the selectors and one service each."""

"""Applications mapped onto the pint engine (they import pint; pint never imports them)."""

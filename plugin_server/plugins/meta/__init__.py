"""The main-process side of a plugin's ``meta`` and sandbox globals.

One module per API: :mod:`.config` (config defaults, attachments),
:mod:`.cache`, :mod:`.storage`, :mod:`.logger` (batched plugin log),
:mod:`.errors` (recording failures), :mod:`.fetch`, :mod:`.capture`,
:mod:`.geoip`, :mod:`.jobs`. :mod:`.host` dispatches a worker's calls to them.
:mod:`.context` and :mod:`.console` import no Django and may be used in
workers.
"""

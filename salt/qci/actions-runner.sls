# GitHub's Actions runner in the dev VM, for `qci serve`'s [server.actions]:
# unpacked from the archive the admin names in the pillar
# (qci:actions_runner:tarball), after Salt checks its SHA-256. qci never
# downloads it, and never registers it: `qci serve` starts it for one job at
# a time with a just-in-time config (`run.sh --jitconfig`), in a machine
# reverted to its snapshot before and after. Applied inside the dev VM, like
# qci.dev-vm; the top file includes it only when a tarball is set.
{%- from 'qci/map.jinja' import qci, prefix with context %}
{%- set runner = qci.actions_runner %}
{%- if runner.tarball %}

qci-actions-runner-dir:
  file.directory:
    - name: {{ prefix }}{{ runner.install_dir }}
    - user: {{ runner.user }}
    - group: {{ runner.group }}
    - mode: '0755'

qci-actions-runner:
  archive.extracted:
    - name: {{ prefix }}{{ runner.install_dir }}
    - source: {{ runner.tarball }}
    - source_hash: sha256={{ runner.sha256 | lower }}
    - source_hash_update: True
    - user: {{ runner.user }}
    - group: {{ runner.group }}
    - enforce_toplevel: False
    - require:
      - file: qci-actions-runner-dir
{%- endif %}

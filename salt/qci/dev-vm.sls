# qci in the dev VM: the qci-vm binary and the qci.Status and qci.Export
# services dom0 calls. Applied inside the dev VM (qubesctl --targets), which
# must be a StandaloneVM so that /usr/bin and /etc outlive a reboot
# (qci.dev-vm-qube makes sure of that). Needs no qvm.* state.
{%- from 'qci/map.jinja' import qci, prefix with context %}

qci-vm-binary:
  file.managed:
    - name: {{ prefix }}/usr/bin/qci-vm
    - source: salt://qci/bin/qci-vm
    - user: {{ qci.owner }}
    - group: {{ qci.group }}
    - mode: '0755'
{%- for service in ['qci.Status', 'qci.Export'] %}

qci-vm-service-{{ service }}:
  file.managed:
    - name: {{ prefix }}/etc/qubes-rpc/{{ service }}
    - source: salt://qci/qubes-rpc/dev-vm/{{ service }}
    - user: {{ qci.owner }}
    - group: {{ qci.group }}
    - mode: '0755'
    - require:
      - file: qci-vm-binary
{%- endfor %}

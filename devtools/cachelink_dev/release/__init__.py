"""The product as a user installs it: the Helm release (``chart``), kubectl against one explicit kubeconfig
(``kube``), and the files shipped with the package (``resources``: CRDs, chart, the demo's samples).
Nothing is imported here, so the light modules stay light.
"""

"""Self-supervised landmark discovery: Siamese regressor trained through thin-plate splines.

Modules (import them directly; this package stays light so that importing it pulls in no torch):

- :mod:`.regressor`  the CNN from an image to K landmarks (2-D and 3-D)
- :mod:`.tps`        differentiable thin-plate splines and warping
- :mod:`.loss`       image match + condition-number regulariser
- :mod:`.train`      ``train_landmarks_steps``, ``train_landmarks``, ``train_from_files``
- :mod:`.model`      ``save_landmark_model``, ``load_landmark_model``, ``predict_landmarks``
- :mod:`.synthetic`  warped Shepp-Logan and volume populations with known maps
- :mod:`.metrics`    correspondence error and registered/unregistered MSE
- :mod:`.detect`, :mod:`.redundancy`, :mod:`.cli`  detection, importance, command line
"""

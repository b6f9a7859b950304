"""The read-only web dashboard (`learnloop dashboard`): server/dashboard/app.py."""

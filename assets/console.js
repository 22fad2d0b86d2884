// dropsync console: the batch upload's progress bar. The form works without this script (a
// plain post); with it, the same post goes through XMLHttpRequest so its progress can be shown,
// and the browser then goes where the answer went (the batch's report).
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  var form = document.getElementById("batch");
  if (!form || !window.XMLHttpRequest || !window.FormData) return;
  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var box = form.querySelector(".progress");
    var bar = document.getElementById("progress");
    var text = document.getElementById("progress-text");
    var button = form.querySelector("button[type=submit]");
    box.hidden = false;
    button.disabled = true;
    var xhr = new XMLHttpRequest();
    xhr.open("POST", form.action);
    xhr.upload.addEventListener("progress", function (e) {
      if (!e.lengthComputable) return;
      var percent = Math.floor((e.loaded / e.total) * 100);
      bar.value = percent;
      text.textContent = percent + "%";
    });
    xhr.addEventListener("load", function () {
      if (xhr.status >= 200 && xhr.status < 300 && xhr.responseURL) {
        window.location.assign(xhr.responseURL);
      } else {
        var page = new DOMParser().parseFromString(xhr.responseText, "text/html");
        var why = page.querySelector(".error");
        text.textContent = why ? why.textContent : "The upload failed (" + xhr.status + ").";
        button.disabled = false;
      }
    });
    xhr.addEventListener("error", function () {
      text.textContent = "The upload failed: the connection was lost.";
      button.disabled = false;
    });
    xhr.send(new FormData(form));
  });
});
